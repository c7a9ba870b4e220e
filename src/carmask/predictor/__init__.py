"""The predictor's parts, behind `carmask.predict.Predictor` (the facade, which
alone imports them; they never import it):

    runner      the models: loaded by name or tier, made ready, compiled, run (TTA, autocast)
"""
