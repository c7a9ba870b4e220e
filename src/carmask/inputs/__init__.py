"""From a photo to what the network sees, on the predictor's device; the one path shared by training and prediction.

    spec        InputSpec (which channels, at what size), MIN_VIEWS, NotEnoughViews, Box (no torch)
    decode      any source to full-resolution uint8 tensors: Pillow workers, nvjpeg in batches
    resize      antialiased resizes of photos and maps; frames, crop and resize
    background  a car's studio from its views: median, mean, differences, differing pixels, crop boxes
    build       model_inputs / car_inputs: frames -> backgrounds -> differences -> crops at the network's size

The package imports nothing itself, so that `carmask.inputs.spec` stays light.
"""
