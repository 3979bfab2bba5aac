from deepguard.models.mtcnn.predictor import MTCNN, load

__all__ = ["MTCNN", "load"]
