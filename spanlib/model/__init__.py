"""The networks: timm ViT with the attention probe, DINO heads and loss, the SPAN regulariser."""
