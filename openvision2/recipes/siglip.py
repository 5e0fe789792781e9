"""SigLIP (Zhai et al. 2023): CLIP's two towers with the pairwise sigmoid loss (learnable
temperature t' = log 10 and bias -10), ring-chunked over the batch devices."""

from __future__ import annotations

from openvision2.recipes.clip import Clip
from openvision2.recipes.registry import register


@register
class Siglip(Clip):
    name = "siglip"
    own_loss = "sigmoid"
