import sys, time, math, torch, json
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv)>1 else 1)
from diffusers import WanTransformer3DModel
from diffkit.data import MovingDigitsConfig, make_moving_digits
from diffkit.core.schedules import FlowMatching
from diffkit.core.samplers import euler_sample
from diffkit import models
import torch.nn.functional as F
DIG=int(sys.argv[2]) if len(sys.argv)>2 else 24
PATCH=int(sys.argv[3]) if len(sys.argv)>3 else 4
STEPS=int(sys.argv[4]) if len(sys.argv)>4 else 600
BS=int(sys.argv[5]) if len(sys.argv)>5 else 64
W=int(sys.argv[6]) if len(sys.argv)>6 else 128
L=int(sys.argv[7]) if len(sys.argv)>7 else 4
K=int(sys.argv[8]) if len(sys.argv)>8 else 1
LR=float(sys.argv[9]) if len(sys.argv)>9 else 1e-3
TD=16 if K==1 else 11+K
EV=int(sys.argv[10]) if len(sys.argv)>10 else 100
torch.manual_seed(0)
cfg=dict(patch_size=(1,PATCH,PATCH),num_attention_heads=W//32,attention_head_dim=32,in_channels=1,out_channels=1,text_dim=TD,freq_dim=64,ffn_dim=4*W,num_layers=L,cross_attn_norm=True,qk_norm="rms_norm_across_heads",eps=1e-6,rope_max_seq_len=64)
m=WanTransformer3DModel(**cfg)
print("params",sum(p.numel() for p in m.parameters()))
GRID=int(sys.argv[11]) if len(sys.argv)>11 else 1
mc=MovingDigitsConfig(num_frames=1,size=32,digit_size=DIG,max_digits=1,min_speed=1.0,max_speed=3.0,grid=GRID)
data=make_moving_digits(8000,mc,seed=0)
X=data.videos.permute(0,2,1,3,4).contiguous(); Y=data.labels[:,0]
SH=float(sys.argv[12]) if len(sys.argv)>12 else 1.0
sch=FlowMatching(shift=SH)
opt=torch.optim.AdamW(m.parameters(),lr=LR,weight_decay=0.0,betas=(0.9,0.99))
ema=[p.detach().clone() for p in m.parameters()]
def cond(l):
    if K==1: return F.one_hot(l.clamp(min=0),16).float()[:,None,:]
    c=F.one_hot(l.clamp(min=0),11).float()[:,None,:].expand(-1,K,-1)
    k=torch.eye(K)[None].expand(len(l),-1,-1)
    return torch.cat([c,k],-1)
g=torch.Generator().manual_seed(1)
clf=models.load("digit-classifier")
def evalacc(n=100, steps=20, cfgs=2.0):
    bak=[p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p,e in zip(m.parameters(),ema): p.copy_(e)
    m.eval()
    lab=torch.arange(n)%10
    c=torch.cat([cond(lab),cond(torch.full_like(lab,10))])
    def fn(x,t):
        with torch.autocast("cpu",dtype=torch.bfloat16):
            o=m(torch.cat([x,x]),sch.model_t(torch.cat([t,t])),c,return_dict=False)[0].float()
        cc,u=o.chunk(2); return u+cfgs*(cc-u)
    with torch.no_grad():
        x=euler_sample(fn,sch,(n,1,1,32,32),steps,torch.Generator().manual_seed(5)).clamp(-1,1)
    from diffkit.models import moving_digits_wan as mdw
    mdw.VIDEO["digit_size"]=DIG
    crops=mdw.classifier_crops(x[:,:,0])
    _,pred=clf.embed(crops)
    with torch.no_grad():
        for p,b in zip(m.parameters(),bak): p.copy_(b)
    m.train()
    return float((pred==lab).float().mean()), x
t0=time.time()
for step in range(1,STEPS+1):
    idx=torch.randint(0,len(X),(BS,),generator=g)
    x0=X[idx]; y=Y[idx]
    y=torch.where(torch.rand(BS,generator=g)<0.1,torch.full_like(y,10),y)
    n=torch.randn(x0.shape,generator=g)
    t=sch.shift_sigma(torch.rand(BS,generator=g))
    xt=sch.add_noise(x0,n,t)
    with torch.autocast("cpu",dtype=torch.bfloat16):
        pred=m(xt,sch.model_t(t),cond(y),return_dict=False)[0].float()
    loss=(pred-sch.target(x0,n,t)).pow(2).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step()
    with torch.no_grad():
        d=min(0.995,(1+step)/(10+step))
        for e,p in zip(ema,m.parameters()): e.lerp_(p.detach(),1-d)
    if step%EV==0:
        acc,_=evalacc(); acc4,_=evalacc(cfgs=4.0)
        print(f"step {step} loss {loss.item():.4f} {time.time()-t0:.0f}s acc {acc:.2f} acc_cfg4 {acc4:.2f}",flush=True)
acc,x=evalacc(100)
torch.save(x,f"/tmp/pilot_{DIG}_{PATCH}_{K}_{LR}_{GRID}.pt")
