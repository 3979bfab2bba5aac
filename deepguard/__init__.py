"""deepguard: protect photos and videos of people against deepfakes."""

__version__ = "0.1.0"
