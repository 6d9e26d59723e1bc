"""AIM model library: embeddings, interaction functions, models, search. Tensors in, tensors out.

No files, no orchestration, no tracking here: those live in tasks/ and flows/.
"""
