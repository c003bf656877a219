"""Training: data layer, model registry, fitting, grid search and reports."""
