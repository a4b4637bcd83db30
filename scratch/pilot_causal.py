import sys, time, torch
torch.set_num_threads(1)
import torch.nn.functional as F
from diffkit.data import MovingDigitsConfig, make_moving_digits
from diffkit.models import causal_wan as cw
from diffkit.models import moving_digits_wan as mdw
from diffkit import models
from diffkit.core.schedules import FlowMatching
DIG=int(sys.argv[1]); STEPS=int(sys.argv[2]); BS=int(sys.argv[3]); LR=float(sys.argv[4]); EV=int(sys.argv[5])
DIM=int(sys.argv[6]) if len(sys.argv)>6 else 64
LAY=int(sys.argv[7]) if len(sys.argv)>7 else 4
torch.manual_seed(0)
config=dict(cw.DEFAULT_CONFIG); config.update(dim=DIM, ffn_dim=4*DIM, layers=LAY)
m=cw.build(config)
print("params",sum(p.numel() for p in m.parameters()),flush=True)
mc=MovingDigitsConfig(num_frames=12,size=32,digit_size=DIG,max_digits=1)
data=make_moving_digits(8000,mc,seed=0)
X=data.videos; Y=data.labels
levels=cw.sigmas_for().float(); sch=FlowMatching(shift=cw.SHIFT)
opt=torch.optim.AdamW(m.parameters(),lr=LR,weight_decay=0.01)
ema=[p.detach().clone() for p in m.parameters()]
g=torch.Generator().manual_seed(1)
clf=models.load("digit-classifier")
mdw.VIDEO["digit_size"]=DIG
def evalacc(n=50):
    bak=[p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p,e in zip(m.parameters(),ema): p.copy_(e)
    m.eval()
    lab=torch.arange(n)%10
    labels=torch.stack([lab,torch.full_like(lab,-1)],1)
    noise=cw.rollout_noise(n,config,torch.Generator().manual_seed(7))
    with torch.no_grad():
        lat=cw.rollout(m,labels,noise)
    vids=cw.decode_latents(lat,config).clamp(-1,1)
    crops=mdw.classifier_crops(vids.flatten(0,1))
    _,pred=clf.embed(crops)
    acc=float((pred.view(n,-1)==lab[:,None]).float().mean())
    with torch.no_grad():
        for p,b in zip(m.parameters(),bak): p.copy_(b)
    m.train()
    return acc,vids
t0=time.time()
ch=config["chunk_frames"]
for step in range(1,STEPS+1):
    idx=torch.randint(0,len(X),(BS,),generator=g)
    clean=cw.encode_video(X[idx],config); B,Fr=clean.shape[:2]
    y=Y[idx].clone()
    nck=Fr//ch
    u=torch.rand(B,nck,2,generator=g)
    pick=levels[(u[...,0]*len(levels)).long().clamp(max=len(levels)-1)]
    uni=sch.shift_sigma(u[...,1])
    sigma=torch.where(torch.rand(B,nck,generator=g)<0.75,pick,uni).repeat_interleave(ch,1)
    noise=torch.randn(clean.shape,generator=g)
    s=sigma[...,None,None,None]
    noisy=(1-s)*clean+s*noise
    seq,fidx,mask=cw.teacher_forcing_inputs(m,clean,noisy)
    t=torch.cat([torch.zeros(B,Fr),1000.0*sigma],1)
    with torch.autocast("cpu",dtype=torch.bfloat16):
        v=m(seq,t,y,frame_index=fidx,mask=mask)[:,Fr:].float()
    loss=(v-(noise-clean)).pow(2).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step()
    with torch.no_grad():
        d=min(0.999,(1+step)/(10+step))
        for e,p in zip(ema,m.parameters()): e.lerp_(p.detach(),1-d)
    if step%EV==0:
        acc,v=evalacc()
        print(f"step {step} loss {loss.item():.4f} {time.time()-t0:.0f}s acc {acc:.2f}",flush=True)
acc,v=evalacc(50)
torch.save(v,f"/tmp/pilotC_{DIG}.pt")
