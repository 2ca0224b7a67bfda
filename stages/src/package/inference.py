"""SageMaker PyTorch serving entry points for a model packaged by pipe.

The archive holds a TorchScript `model.pt` (forward(input_ids, attention_mask)
-> logits), the tokenizer files and `config.json` (labels, max_len) at its
root; SageMaker unpacks it into `model_dir`.
"""
import json
import os

import torch
from transformers import AutoTokenizer


def model_fn(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Without a max_len, the same default as pipe's own server
    # (pipe_protocol::serve::DEFAULT_MAX_LEN).
    max_len = int(config.get("max_len", 128))
    return {"model": model, "tokenizer": tokenizer, "max_len": max_len}


def input_fn(request_body, content_type="application/json"):
    if content_type != "application/json":
        raise ValueError(f"unsupported content type {content_type}; send application/json")
    data = json.loads(request_body)
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, list) or not data or not all(isinstance(s, str) for s in data):
        raise ValueError("expected a string or a non-empty list of strings")
    return data


def predict_fn(input_data, model):
    enc = model["tokenizer"](
        input_data, padding=True, truncation=True, max_length=model["max_len"], return_tensors="pt"
    )
    with torch.no_grad():
        return model["model"](enc["input_ids"], enc["attention_mask"]).tolist()
