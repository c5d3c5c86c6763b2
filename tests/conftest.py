import torch

torch.set_num_threads(1)  # the tests use small tensors; one thread avoids oversubscribing shared cores
