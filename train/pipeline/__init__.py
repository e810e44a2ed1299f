"""The whole pipeline from one YAML: plan, manifests, the arithmetic world, evaluation, report and model card."""
