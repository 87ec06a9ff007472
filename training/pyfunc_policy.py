"""What MLflow runs to load a policy model (models from code, no pickle): see :mod:`training.policy_model`."""

import mlflow.models

from training.policy_model import PolicyModel

mlflow.models.set_model(PolicyModel())
