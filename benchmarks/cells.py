"""The hand-written GRU cell (Model7) eager, TorchScript-scripted and torch.compile'd.

    python -m benchmarks.cells

Times `advance` (the engine's step) of a gru-custom model for the batch shapes the server
sees, and checks each variant against eager. Prints microseconds per call side by side.
"""

from __future__ import annotations

import time

import torch

from model_store import ModelConfig, build_model, compile_cell

SHAPES = [(1, 1), (64, 1), (256, 1), (64, 40)]  # (batch, tokens)


def per_call_us(fn, *args, repeat: int = 300) -> float:  # type: ignore[no-untyped-def]
    for _ in range(20):
        fn(*args)
    start = time.perf_counter()
    for _ in range(repeat):
        fn(*args)
    return (time.perf_counter() - start) / repeat * 1e6


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    eager = build_model(ModelConfig("gru-custom")).eval()
    variants = {"eager": eager}
    for how in ("script", "compile"):
        model = build_model(ModelConfig("gru-custom")).eval()
        model.load_state_dict(eager.state_dict())
        start = time.perf_counter()
        compile_cell(model, how)
        variants[how] = model
        print(f"{how}: prepared in {time.perf_counter() - start:.1f} s")
    print(f"{'batch x tokens':>15}" + "".join(f"{k:>12}" for k in variants) + "   max |diff|")
    with torch.inference_mode():
        for b, t in SHAPES:
            x = torch.randint(0, 40, (b, t))
            state = {"h": torch.randn(b, 1, 56)}
            ref = eager.advance_state(x, state)["h"]
            times, diff = [], 0.0
            for model in variants.values():
                times.append(per_call_us(model.advance_state, x, state))
                diff = max(diff, float((model.advance_state(x, state)["h"] - ref).abs().max()))
            print(
                f"{f'{b} x {t}':>15}" + "".join(f"{v:>10.0f}us" for v in times) + f"   {diff:.1e}"
            )


if __name__ == "__main__":
    main()
