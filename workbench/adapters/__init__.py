"""LoRA adapters: wrap chosen projections, fine-tune with the distillation trainer, save and load in
PEFT's layout, merge into the base for deployment."""

from .finetune import base_fingerprint, finetune, training_bytes
from .lora import (ALL_LINEAR, PROJECTIONS, LoraConfig, LoRALinear, add_lora, lora_layers, merge_lora, parse_lora_spec,
                   trainable_parameters, unload_lora)
from .peft_layout import CONFIG_FILE, WEIGHTS_FILE, adapter_config_dict, load_adapter, read_adapter_config, save_adapter

__all__ = ["ALL_LINEAR", "CONFIG_FILE", "PROJECTIONS", "WEIGHTS_FILE", "LoRALinear", "LoraConfig", "adapter_config_dict",
           "add_lora", "base_fingerprint", "finetune", "load_adapter", "lora_layers", "merge_lora", "parse_lora_spec",
           "read_adapter_config", "save_adapter", "trainable_parameters", "training_bytes", "unload_lora"]
