"""One module per runtime, each lowering the export IR (:mod:`eqtools.export.runtime`) to the file that runtime runs.

- :mod:`~eqtools.export.backends.qdq`: the ONNX emitter every ONNX backend shares, the float lowering of
  every op, and the exact QDQ form (the fake-quant arithmetic, quantized layers as Q/DQ around float ops).
- :mod:`~eqtools.export.backends.onnxruntime`: onnxruntime's integer graph (QLinearConv, QGemm, QLinearAdd)
  and running ONNX files in onnxruntime.

Adding a runtime adds a module here: a table of per-op lowerings, a builder, and a check that runs the
file in that runtime.
"""
