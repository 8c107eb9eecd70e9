"""Embedded models: the zoo and its safetensors weights, training recipes, DETR on ShapesWorld, photos."""
