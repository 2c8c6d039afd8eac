"""Train torch's nn.LSTM with `charlm train`'s recipe on the wall clock: the README's torch row.

    python bench/torch_ten_minutes.py ../shared/corpora/tinyshakespeare.txt --max-minutes 10

The same corpus split and vocabulary (charlm.data.load_corpus), the same batches (charlm's
Batcher: batch_size contiguous streams, state carried, reset when the streams wrap), the same
evaluation (charlm's iter_eval over the whole held-out tail, state carried, every eval_every
steps and at the end, on the clock as in charlm), the same model shape, dropout (between layers
and before the head), init (uniform(+-1/sqrt(H)) weights, N(0, 1) embedding, zero biases but
the forget gate's, forget_bias; the head's bias zero), optimizer (Adam 0.9/0.999/1e-8 or
RMSprop 0.95/1e-8), global-norm clip and schedule (charlm.train.get_lr, progress = the
fraction of the minutes used). Every option is `charlm train`'s, with its default, so any recipe
can get its torch row. Prints steps, chars/s and val at each evaluation, then a summary line
(--json: one JSON object). torch is not a dependency of charlm: install it to run this.

Known differences: torch's Adam adds eps to sqrt(v_hat), charlm's to sqrt(v) (the paper's
"efficient" form: eps differs by sqrt(1 - beta2^t), negligible at 1e-8); nn.LSTM has two bias
vectors (b_ih + b_hh; both start at charlm's b, b_hh at zero); charlm also writes checkpoints
and draws a sample at each evaluation, which this script does not (a second or two each).
"""

import argparse
import json
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

from charlm.batches import Batcher, iter_eval
from charlm.data import load_corpus
from charlm.model import ModelConfig
from charlm.train import DEFAULT_MINUTES, LR_DECAYS, TrainConfig, get_lr

CELLS = ("lstm", "gru", "rnn")  # the cells torch has as charlm defines them
FORGET = 1  # the forget gate's block in torch's (and charlm's) i, f, g, o order


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("corpus", type=Path)
    model = {f.name: f.default for f in fields(ModelConfig)}
    train = {f.name: f.default for f in fields(TrainConfig)}
    for name in ("n_layer", "n_hidden", "n_embd"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=model[name])
    p.add_argument("--cell", choices=CELLS, default=model["cell"])
    p.add_argument("--dropout", type=float, default=model["dropout"])
    p.add_argument("--forget-bias", type=float, default=model["forget_bias"])
    for name in ("seq_len", "batch_size", "warmup_steps", "eval_every", "max_steps", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=train[name])
    for name in ("lr", "min_lr_frac", "grad_clip", "val_frac", "max_minutes"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=train[name])
    p.add_argument("--optimizer", choices=("adam", "rmsprop"), default=train["optimizer"])
    p.add_argument("--lr-decay", choices=LR_DECAYS, default=train["lr_decay"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = p.parse_args(argv)
    cfg = TrainConfig(**{k: getattr(args, k) for k in train if hasattr(args, k)})
    try:
        cfg.validate()
        if not 0 <= args.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
        for name in ("n_layer", "n_hidden", "n_embd"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    except Exception as e:  # noqa: BLE001 (CharlmError or ValueError: one line either way)
        p.error(str(e))
    if not cfg.max_steps and not cfg.max_minutes:
        cfg.max_minutes = DEFAULT_MINUTES
    args.cfg = cfg
    return args


def build(torch, args, vocab_size: int):
    """Embedding, recurrent stack and head, initialised as charlm.model.CharLSTM.init_params."""
    nn = torch.nn
    rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[args.cell]
    H = args.n_hidden
    emb = nn.Embedding(vocab_size, args.n_embd)
    rnn = rnn_cls(args.n_embd, H, num_layers=args.n_layer, batch_first=True,
                  dropout=args.dropout if args.n_layer > 1 else 0.0)
    head = nn.Linear(H, vocab_size)
    k = 1.0 / math.sqrt(H)
    with torch.no_grad():
        nn.init.normal_(emb.weight, 0.0, 1.0)
        for name, w in rnn.named_parameters():
            if name.startswith("weight"):
                nn.init.uniform_(w, -k, k)
            else:
                w.zero_()
                if args.cell == "lstm" and name.startswith("bias_ih"):
                    w[FORGET * H : (FORGET + 1) * H] = args.forget_bias
        nn.init.uniform_(head.weight, -k, k)
        head.bias.zero_()
    return emb, rnn, nn.Dropout(args.dropout), head


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    cfg = args.cfg
    try:
        import torch
    except ImportError:
        sys.exit("error: this script needs torch (pip install torch); charlm itself does not")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)
    corpus = load_corpus(args.corpus, cfg.val_frac)
    V = corpus.vocab.vocab_size
    emb, rnn, drop, head = build(torch, args, V)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = (torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
           if cfg.optimizer == "adam" else
           torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.95, eps=1e-8))
    batcher = Batcher(corpus.train, cfg.batch_size, cfg.seq_len)
    L, B, H = args.n_layer, cfg.batch_size, args.n_hidden

    def zero_state(b: int):
        h = torch.zeros(L, b, H)
        return (h, torch.zeros(L, b, H)) if args.cell == "lstm" else h

    def detach(s):
        return tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach()

    def logits_of(x, state):
        out, state = rnn(emb(x), state)
        return head(drop(out)), state

    def evaluate() -> float:
        emb.eval(), rnn.eval(), drop.eval()
        total, count, state, b = 0.0, 0, None, 0
        with torch.no_grad():
            for x, y in iter_eval(corpus.val, cfg.batch_size, cfg.seq_len):
                if state is None or x.shape[0] != b:
                    b, state = x.shape[0], zero_state(x.shape[0])
                logits, state = logits_of(torch.from_numpy(x), state)
                total += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, V), torch.from_numpy(y).reshape(-1),
                    reduction="sum").item()
                count += y.size
        rnn.train(), drop.train()
        return total / count

    n_params = sum(p.numel() for p in params)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {L}x{H} "
          f"{args.cell}, embedding {args.n_embd}, {n_params:,} parameters; corpus "
          f"{args.corpus} ({len(corpus.train):,} train / {len(corpus.val):,} val chars, "
          f"{V} symbols)", file=sys.stderr)
    state = zero_state(B)
    step, history = 0, []
    minutes = cfg.max_minutes
    t_start = time.perf_counter()
    deadline = t_start + minutes * 60 if minutes else math.inf
    train_s, t_step = 0.0, 0.0

    def record(val: float) -> None:
        row = {"step": step, "val_loss": round(val, 4),
               "chars_per_s": round(step * B * cfg.seq_len / max(train_s, 1e-9)),
               "time_s": round(time.perf_counter() - t_start, 1)}
        history.append(row)
        print(f"step {step:5d}  val {val:.4f} nats/char  {row['chars_per_s']:,} chars/s  "
              f"{row['time_s']:.0f} s", file=sys.stderr, flush=True)

    while not (cfg.max_steps and step >= cfg.max_steps) and time.perf_counter() < deadline:
        t_step = time.perf_counter()
        p = step / cfg.max_steps if cfg.max_steps else 0.0
        if minutes:  # charlm's budget_used: the larger of the step and the clock fractions
            p = max(p, (time.perf_counter() - t_start) / (minutes * 60))
        lr = get_lr(step, min(p, 1.0), cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batcher.next_batch()
        if batcher.wrapped:
            state = zero_state(B)
        logits, state = logits_of(torch.from_numpy(x), detach(state))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                                 torch.from_numpy(y).reshape(-1))
        if not math.isfinite(loss.item()):
            sys.exit(f"error: the loss became {loss.item()} at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        train_s += time.perf_counter() - t_step
        if step % cfg.eval_every == 0:
            record(evaluate())
    if not history or history[-1]["step"] != step:
        record(evaluate())
    result = {"peer": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "steps": step, "chars_per_s": history[-1]["chars_per_s"],
              "final_val": history[-1]["val_loss"], "history": history,
              "options": {k: v for k, v in vars(args).items() if k not in ("cfg", "corpus")}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"torch nn.{type(rnn).__name__}: {step:,} steps, {result['chars_per_s']:,} chars/s, "
              "val " + " / ".join(f"{r['val_loss']:.3f}@{r['step']}" for r in history)
              + f", final val {result['final_val']:.4f} nats/char")
    return result


if __name__ == "__main__":
    main()
