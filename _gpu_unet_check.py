import time, torch, json
from seqmamba.config import ModelConfig
from seqmamba.heads import build_model
from seqmamba.tokenizers import MuLawTokenizer
from seqmamba.tasks.generate import sample_audio
out = {}
cfg = ModelConfig(d_model=64, n_layer=15, vocab_size=257, backbone="unet", unet={"pool": [16, 16]})
m = build_model(cfg, tokenizer=MuLawTokenizer(8)).cuda().eval()
sample_audio(m, 600, num=16, batch_size=16, top_p=0.95)  # compile the step kernels
for B in (1, 16, 64):
    r = sample_audio(m, 1024, num=B, batch_size=B, top_p=0.95)
    out[f"unet_B{B}"] = {"ms_per_step": 1e3 * r.seconds_wall / 1024, "rtf": B * 1024 / 16000 / r.seconds_wall}
    print(out, flush=True)
with torch.inference_mode():
    c = m.allocate_cache(16); ids = torch.zeros(16, dtype=torch.long, device="cuda")
    for _ in range(300): m.step(ids, c)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(1024): m.step(ids, c)
    torch.cuda.synchronize(); out["unet_B16_step_only_ms"] = 1e3 * (time.perf_counter() - t) / 1024
print(json.dumps(out, indent=1))
