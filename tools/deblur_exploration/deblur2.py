"""Thirteenth round: the runtime's deblur="auto" against deblur=None on the same 20 CRCHisto
TRAINING images, blurred by sigma 1, 1.5, 2 px and sigma 2 + JPEG q50. Run as it was:
python tools/deblur_exploration/deblur2.py fast-cpu phenotypes (docs/results.md, thirteenth round)."""
import sys, numpy as np, logging
sys.path.insert(0,"/work/main/benchmarks")
from micronet.runtime.detector import Detector
from micronet.runtime.evaluation.datasets import load_point_folder
from micronet.runtime.evaluation.metrics import evaluate_images
from _perturbations import blur, jpeg
data=load_point_folder("/work/shared/data/crchisto","train")
idx=list(range(0,70,3))[:20]
ims=[data.images[i] for i in idx]; pts=[data.points[i] for i in idx]
for model in sys.argv[1:]:
    on=Detector(model,device="cpu"); off=Detector(model,device="cpu",deblur=None)
    def f1(det,images): return round(evaluate_images([det.detect(im,mpp=0.55).xy for im in images],pts,6).pooled.f1,4)
    print(model,"clean",f1(on,ims),f1(off,ims),flush=True)
    for name,fn in (("blur1",lambda im:blur(im,1.0)),("blur1.5",lambda im:blur(im,1.5)),("blur2",lambda im:blur(im,2.0)),("blur2+q50",lambda im:jpeg(blur(im,2.0),50))):
        bl=[fn(im) for im in ims]
        print(model,name,"auto",f1(on,bl),"none",f1(off,bl),flush=True)
