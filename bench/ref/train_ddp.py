"""train_ref.py's careful recipe under torchrun with DistributedDataParallel (gloo).

Usage: torchrun --nproc-per-node N train_ddp.py --cola ZIP --model DIR [--batch 32] [--lr 1e-4]
       [--warmup 0.1] [--epochs 3] [--threads 1] [--out JSON]
The same data, split, tokenization, dynamic padding, AdamW (eps 1e-8), grad-norm clip 1.0,
warm-up + linear decay and seed as train_ref.py. `--batch` is the global batch: every rank draws
the same shuffled global batches and trains on its contiguous slice of each; DDP averages the
gradients. Rank 0 times the training (all ranks finished) and scores the test split.
"""
import argparse, io, json, os, time, zipfile
import numpy as np, pandas as pd, torch, torch.distributed as dist
from sklearn.model_selection import train_test_split
from sklearn.metrics import matthews_corrcoef, accuracy_score
from transformers import BertForSequenceClassification, BertTokenizerFast

ap = argparse.ArgumentParser()
ap.add_argument("--cola", required=True); ap.add_argument("--model", required=True); ap.add_argument("--out")
ap.add_argument("--batch", type=int, default=32); ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--warmup", type=float, default=0.1); ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(a.threads); torch.manual_seed(1)
MAX_LEN = 64
z = zipfile.ZipFile(a.cola)
def tsv(name):
    return pd.read_csv(io.BytesIO(z.read(name)), sep="\t", header=None, usecols=[1, 3], names=["label", "sentence"], quoting=3)
train, test = train_test_split(tsv("cola_public/raw/in_domain_train.tsv"), random_state=42)
tok = BertTokenizerFast.from_pretrained(a.model, do_lower_case=True)
encode = lambda sents: [tok.encode(s, add_special_tokens=True)[:MAX_LEN] for s in sents]

def pad(ids, idx, labels):
    L = max(len(ids[j]) for j in idx)
    x = torch.zeros(len(idx), L, dtype=torch.long)
    for r, j in enumerate(idx):
        x[r, :len(ids[j])] = torch.tensor(ids[j])
    return x, (x > 0).long(), torch.tensor([labels[j] for j in idx])

model = torch.nn.parallel.DistributedDataParallel(BertForSequenceClassification.from_pretrained(a.model, num_labels=2))
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, eps=1e-8)
tr_ids = encode(train.sentence.values); tr_lab = train.label.values.tolist()
per_epoch = (len(tr_ids) + a.batch - 1) // a.batch
total = a.epochs * per_epoch; warm = int(a.warmup * total)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
gen = torch.Generator().manual_seed(1)
model.train(); steps = 0; seen = 0; losses = []
dist.barrier(); t0 = time.perf_counter()
for epoch in range(a.epochs):
    order = torch.randperm(len(tr_ids), generator=gen).tolist()
    for i in range(0, len(order), a.batch):
        batch = order[i:i + a.batch]
        lo, hi = len(batch) * rank // world, len(batch) * (rank + 1) // world
        x, m, y = pad(tr_ids, batch[lo:hi], tr_lab)
        opt.zero_grad()
        out = model(x, token_type_ids=None, attention_mask=m, labels=y)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()
        losses.append(out.loss.item()); steps += 1; seen += len(batch)
dist.barrier(); train_s = time.perf_counter() - t0
if rank == 0:
    model.eval(); preds = []
    ids = encode(test.sentence.values); labs = test.label.values.tolist()
    with torch.no_grad():
        for i in range(0, len(ids), 256):
            x, m, _ = pad(ids, list(range(i, min(i + 256, len(ids)))), labs)
            preds += model.module(x, attention_mask=m).logits.argmax(-1).tolist()
    res = {"world_size": world, "threads": a.threads, "batch": a.batch, "epochs": a.epochs, "steps": steps,
           "samples": seen, "train_seconds": train_s, "samples_per_s": seen / train_s,
           "avg_train_loss": float(np.mean(losses)),
           "test": {"accuracy": accuracy_score(labs, preds), "mcc": matthews_corrcoef(labs, preds)},
           "torch": torch.__version__}
    print(json.dumps(res, indent=1))
    if a.out:
        json.dump(res, open(a.out, "w"), indent=1)
dist.destroy_process_group()
