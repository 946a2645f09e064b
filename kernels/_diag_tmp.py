import torch, itertools
from seqmamba.config import ModelConfig
from seqmamba.heads import MambaLM
from seqmamba.kernels.mamba_decode_triton import FusedMambaStep
print("tf32", torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
for dm, nl, B, bi, bs in [(64,1,1,32,64),(64,1,3,32,64),(128,1,1,32,64),(256,1,1,32,64),(256,1,1,16,32),(256,1,1,128,512),(256,8,1,32,64)]:
    torch.manual_seed(0)
    m=MambaLM(ModelConfig(d_model=dm,n_layer=nl,vocab_size=256)).cuda().eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(0.02*torch.randn_like(p))
    c1=m.allocate_cache(B); c2=m.allocate_cache(B)
    f=FusedMambaStep(m,B,block_in=bi,block_ssm=bs)
    ids=torch.randint(0,256,(B,),device="cuda")
    with torch.inference_mode():
        out=[]
        for t in range(3):
            a=m.step(ids,c1).float(); b=f(ids,c2)
            es=max(((l1.ssm_state-l2.ssm_state).norm()/l1.ssm_state.norm()).item() for l1,l2 in zip(c1.layers,c2.layers))
            ec=max(((l1.conv_state-l2.conv_state).norm()/l1.conv_state.norm()).item() for l1,l2 in zip(c1.layers,c2.layers))
            out.append(f"{((a-b).norm()/a.norm()).item():.1e}/{es:.1e}/{ec:.1e}")
            ids=a.argmax(-1)
    print(dm,nl,B,bi,bs,out)
from seqmamba.heads import sample_next
l=torch.randn(1,256,device="cuda"); 
s=torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s): sample_next(l,1.0,None,0.9)
torch.cuda.current_stream().wait_stream(s)
g=torch.cuda.CUDAGraph()
try:
    with torch.cuda.graph(g): o=sample_next(l,1.0,None,0.9)
    r=[]
    for i in range(5): g.replay(); r.append(o.item())
    print("multinomial capture ok", r)
except Exception as e: print("multinomial capture failed", e)
