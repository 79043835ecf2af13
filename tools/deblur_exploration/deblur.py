"""Thirteenth round, the sweep that chose deblur's constants: 20 CRCHisto TRAINING images
(every third), fast-cpu, blur sigma 1 and 2 px, a whole-frame Wiener filter with K in {0.003,
0.01, 0.03} and sigma scaled by {0.7, 1.0}. Run as it was: python tools/deblur_exploration/deblur.py fast-cpu
(docs/results.md, thirteenth round)."""
import sys, numpy as np, time
sys.path.insert(0,"/work/main/benchmarks")
from scipy import ndimage
from micronet.runtime.detector import Detector
from micronet.runtime.evaluation.datasets import load_point_folder
from micronet.runtime.evaluation.metrics import evaluate_images
from micronet.runtime import focus
from _perturbations import blur
D="/work/shared/data"
data=load_point_folder(D+"/crchisto","train")
idx=list(range(0,70,3))[:20]
ims=[data.images[i] for i in idx]; pts=[data.points[i] for i in idx]
model=sys.argv[1] if len(sys.argv)>1 else "fast-cpu"
det=Detector(model,device="cpu")
def f1(images): return evaluate_images([det.detect(im,mpp=0.55).xy for im in images],pts,6).pooled.f1
def wiener(im, s, K):
    h,w=im.shape[:2]
    fy=np.fft.fftfreq(h)[:,None]; fx=np.fft.rfftfreq(w)[None,:]
    H=np.exp(-2*(np.pi**2)*(s**2)*(fx**2+fy**2))
    G=H/(H*H+K)
    out=np.empty(im.shape,np.float64)
    for c in range(3):
        ch=im[...,c].astype(np.float64)
        pad=np.pad(ch,16,mode="reflect")
        hh,ww=pad.shape
        fy2=np.fft.fftfreq(hh)[:,None]; fx2=np.fft.rfftfreq(ww)[None,:]
        H2=np.exp(-2*(np.pi**2)*(s**2)*(fx2**2+fy2**2)); G2=H2/(H2*H2+K)
        out[...,c]=np.fft.irfft2(np.fft.rfft2(pad)*G2,s=pad.shape)[16:-16,16:-16]
    return np.clip(np.rint(out),0,255).astype(np.uint8)
T=0.37/0.55
print("clean",round(f1(ims),4))
for sg in (1.0, 2.0):
    bl=[blur(im,sg) for im in ims]
    print("blur",sg, round(f1(bl),4), "measured px", np.round([focus.edge_blur_px(b) for b in bl[:3]],2))
    for K in (0.003,0.01,0.03):
        for frac in (0.7,1.0):
            out=[]
            for b in bl:
                m=focus.edge_blur_px(b); s=frac*np.sqrt(max(0,m*m-T*T))
                out.append(wiener(b,s,K))
            print("  wiener K",K,"frac",frac, round(f1(out),4), "after px", np.round([focus.edge_blur_px(o) for o in out[:3]],2), flush=True)
