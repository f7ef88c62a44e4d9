"""Tensor and pipeline parallelism over torch.distributed (gloo on CPU, NCCL on GPUs).

- `plan`: which rank holds which heads, channels, vocabulary rows and layers (uneven splits allowed);
- `comm`: the process group and counted collectives (`Comm.traffic`);
- `tensor`: Megatron-style sharding of a loaded model (`shard_tensor_parallel`);
- `pipeline`: stages of contiguous layers and micro-batched generation (`pipeline_generate_ids`);
- `cost`: bytes moved per token by formula, 7B/70B configs, and a latency-bandwidth performance model;
- `launch`: spawning ranks on this machine (`launch`), or handing a command to torchrun;
- `runs`: what a rank runs (load, shard, generate with recorded logits), shared by all launchers.
"""

from .comm import Comm, init, shutdown, under_torchrun
from .launch import launch, relaunch_under_torchrun, threads_per_rank
from .pipeline import PipelineStageModel, pipeline_generate_ids, shard_pipeline
from .plan import even_split, pipeline_stages, tensor_shards
from .tensor import TensorParallelModel, shard_tensor_parallel

__all__ = ["Comm", "PipelineStageModel", "TensorParallelModel", "even_split", "init", "launch",
           "pipeline_generate_ids", "pipeline_stages", "relaunch_under_torchrun", "shard_pipeline",
           "shard_tensor_parallel", "shutdown", "tensor_shards", "threads_per_rank", "under_torchrun"]
