"""doctrain: document-image manifests -> Lightning checkpoints -> parity-verified ONNX.

The package has no re-exports on purpose: each pipeline stage is fingerprinted by the library
modules it imports (doctrain.fingerprint), and a package __init__ that imported every module would
tie every stage to every module, so that editing export code would retrain models.
"""

__version__ = "0.1.0"
