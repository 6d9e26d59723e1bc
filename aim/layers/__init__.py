"""Shared layers: embeddings, interaction functions, MLP, attention. Models are built from these."""

from aim.layers.attention import AttentionNet, MultiHeadSelfAttention, attentive_pair_sum, masked_softmax
from aim.layers.dropout import Dropout, dropout_mask
from aim.layers.embedding import (
    FieldEmbedding,
    FieldLinear,
    NumericEmbedding,
    PrunedFieldEmbedding,
    bag_mean,
    last_dim_mean,
)
from aim.layers.gate import gated_batch_norm
from aim.layers.interaction import (
    FUNCTIONS,
    CompactInteraction,
    Interaction,
    InteractionFunction,
    combination_index,
    elementwise_products,
    gather_columns,
    gather_fields,
    pair_index,
)
from aim.layers.mlp import MLP, FP32Linear

__all__ = [
    "FUNCTIONS",
    "MLP",
    "FP32Linear",
    "AttentionNet",
    "CompactInteraction",
    "Dropout",
    "FieldEmbedding",
    "FieldLinear",
    "Interaction",
    "InteractionFunction",
    "MultiHeadSelfAttention",
    "NumericEmbedding",
    "PrunedFieldEmbedding",
    "attentive_pair_sum",
    "bag_mean",
    "combination_index",
    "dropout_mask",
    "elementwise_products",
    "gather_columns",
    "gather_fields",
    "gated_batch_norm",
    "last_dim_mean",
    "masked_softmax",
    "pair_index",
]
