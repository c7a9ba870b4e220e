"""The predictor's parts, behind `carmask.predict.Predictor` (the facade, which
alone imports them; they never import it), in the order a model batch meets them:

    stream      lookahead, batching whole cars, the finishing thread, the decoding threads
    photos      a car as given (Car), a photo in flight (Slot), its outcome (Prediction)
    compute     a batch's photos grouped into sets, model inputs, the studio check, the network
    setpolicy   which photos form a set, and why not (a Note): pure, on names, sizes and shares
    runner      the models: loaded by name or tier, made ready, compiled, run (TTA, autocast)
    finish      probabilities placed at output size, the refine hook, turned, copied back
    stages      the stages' names and their timing when profiling
"""
