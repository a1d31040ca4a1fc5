"""Knowledge distillation: a frozen teacher run of any architecture teaches a student (``slm distill``)."""
