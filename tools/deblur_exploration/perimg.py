"""Thirteenth round: per-image F1 of fast-cpu with and without deblur on those 20 CRCHisto
TRAINING images blurred by sigma 2 px (img1: the sparse image where it adds false
detections). Run as it was: python tools/deblur_exploration/perimg.py."""
import sys, numpy as np
sys.path.insert(0,"/work/main/benchmarks")
from micronet.runtime.detector import Detector
from micronet.runtime.evaluation.datasets import load_point_folder
from micronet.runtime.evaluation.metrics import evaluate_images
from _perturbations import blur
data=load_point_folder("/work/shared/data/crchisto","train")
idx=list(range(0,70,3))[:20]
on=Detector("fast-cpu",device="cpu"); off=Detector("fast-cpu",device="cpu",deblur=None)
for i in idx:
    b=blur(data.images[i],2.0); p=[data.points[i]]
    a=evaluate_images([on.detect(b,mpp=0.55).xy],p,6).pooled; n=evaluate_images([off.detect(b,mpp=0.55).xy],p,6).pooled
    print(data.names[i], len(data.points[i]), f"auto {a.f1:.3f} P{a.precision:.2f} R{a.recall:.2f}  none {n.f1:.3f} P{n.precision:.2f} R{n.recall:.2f}")
