"""train: ``python -m train --config configs/X.yaml [k=v ...] [--resume auto|PATH]`` under DeepSpeed.

Modules, one job each: ``config`` (typed ``TrainConfig``), ``deepspeed_config`` (the generated
DeepSpeed JSON), ``optim`` (AdamW groups, LR schedule), ``dist`` (process group, CPU accelerator),
``engine`` (model -> DeepSpeed engine), ``loop`` (the training loop), ``checkpoint`` (atomic save,
resume, fp32 weights), ``logger`` (JSONL, TensorBoard, tqdm), ``ema``, ``eval_hook``.
"""
