"""Pretraining: views, the data loader, the DINO/SPAN trainer."""
