"""How a training step is taken, besides the Trainer's autograd step (Trainer._eager_step):

    direct.py          DirectStep: the fused backend's whole step in one op call, no autograd engine (CPU)
    fused_updates.py   the optimisers whose update that op applies itself (SGD, Adam, AdamW)
    graph.py           CapturedStep: any step captured in a CUDA graph and replayed
"""
