"""ONNX image classifiers as torch modules that certify can bound.

Published models come as ONNX files written by many exporters; certify needs a plain
``nn.Module`` taking pixel images N x C x H x W in [0, 1] that auto_LiRPA can trace.
:func:`~model_zoo.onnx.loading.load_onnx` runs five steps, one module each:

1. :mod:`~model_zoo.onnx.file`: parse the file, read external data only from beside it,
   run the ONNX checker, check the one float input and one output;
2. :mod:`~model_zoo.onnx.graph` (with :mod:`~model_zoo.onnx.batch`): rewrite exporter
   idioms into the subset onnx2torch 1.5 converts, and free a fixed batch size;
3. :mod:`~model_zoo.onnx.convert`: lower the opset and convert with onnx2torch, imported
   through :mod:`~model_zoo.onnx.onnx2torch_import` (which stands in for a missing
   torchvision);
4. :mod:`~model_zoo.onnx.loading`: choose the image layout and wrap the network;
5. :mod:`~model_zoo.onnx.check`: run the graph as read (before step 2) with onnxruntime
   on probe images (corners of the pixel box, random images) and refuse the model if the
   wrapped network's logits differ by more than a small tolerance; the difference is
   kept as ``conversion_difference``.

:mod:`~model_zoo.onnx.proto` holds the protobuf helpers the steps share.
"""
