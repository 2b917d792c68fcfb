"""smcluster: super multi-class deep image clustering (Hu et al. 2023, after SCAN).

Three stages (docs/METHOD.md): a contrastive feature model, three-view neighbour mining and
SCAN clustering heads. ``SMCluster`` is the estimator; ``load_dataset`` reads images;
``evaluate`` scores a clustering against labels.
"""

from smcluster.api import SMCluster
from smcluster.config import Config
from smcluster.data import load_dataset
from smcluster.metrics import evaluate

__all__ = ["Config", "SMCluster", "evaluate", "load_dataset"]
__version__ = "0.1.0"
