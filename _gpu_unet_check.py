import time, torch, json, os
from seqmamba.config import ModelConfig
from seqmamba.heads import build_model
from seqmamba.tokenizers import MuLawTokenizer
from seqmamba.tasks.generate import sample_audio
dev = "cuda"; out = {}
torch.manual_seed(0)
def mk(d, n, pools, dtype=torch.float32):
    cfg = ModelConfig(d_model=d, n_layer=n, vocab_size=257, backbone="unet", unet={"pool": pools})
    return build_model(cfg, tokenizer=MuLawTokenizer(8)).to(dev, dtype).eval()
# 1. recurrent == parallel on the Triton path, and GPU == CPU
m = mk(32, 5, [4, 4]); ids = torch.randint(0, 256, (2, 203), device=dev)
with torch.no_grad():
    par = m.backbone(ids); c = m.allocate_cache(2)
    rec = torch.stack([m.backbone.step(ids[:, t], c) for t in range(ids.shape[1])], 1)
    cpu = m.cpu().backbone(ids.cpu()); m.to(dev)
out["rec_vs_par_fp32_cuda"] = (par - rec).abs().max().item()
out["cuda_vs_cpu"] = (par.cpu() - cpu).abs().max().item()
print(out, flush=True)
# 2. paper model training step
m = mk(64, 15, [16, 16]).train(); out["paper_params"] = m.num_parameters()
opt = torch.optim.AdamW(m.parameters(), 2e-3)
for B, L in [(1, 958464)]:
    x = torch.randint(0, 256, (B, L + 1), device=dev)
    torch.cuda.reset_peak_memory_stats(); ts = []
    for i in range(2):
        torch.cuda.synchronize(); t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = m(x[:, :-1], labels=x[:, 1:])
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    out[f"train_B{B}_L{L}"] = {"s_per_step": min(ts), "tok_per_s": B * L / min(ts),
                              "peak_GiB": torch.cuda.max_memory_allocated() / 2**30, "loss": loss.item()}
    print(out, flush=True)
# 3. decode speed (eager U-Net steps) at batch 1 and 16
m.eval()
for B in (16,):
    r = sample_audio(m, 1000, num=B, batch_size=B, top_p=0.95)
    out[f"decode_unet_B{B}_rtf"] = B * 1000 / 16000 / r.seconds_wall
    print(out, flush=True)
print(json.dumps(out, indent=1))
