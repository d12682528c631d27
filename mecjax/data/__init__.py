"""Input: sources (tfds by name, local folder or archive), grain pipelines, augmentation."""

from mecjax.data.augment import RECIPES, Recipe, get_recipe
from mecjax.data.pipeline import TrainInput, eval_batches
from mecjax.data.sources import DataError, load_config_split, load_split, storage

__all__ = ["DataError", "RECIPES", "Recipe", "TrainInput", "eval_batches", "get_recipe",
           "load_config_split", "load_split", "storage"]
