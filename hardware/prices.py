"""GPU rental prices (``data/prices.json``: on-demand USD per GPU-hour, each offer with its source) and the
default price of a GPU: the median of its offers."""

from __future__ import annotations

import json
import statistics
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from parallelplan.hardware.errors import HardwareError
from parallelplan.hardware.spec import GPUSpec


class PriceOffer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    gpu: str
    provider: str
    offer: str
    usd_per_gpu_hour: float
    pricing: str
    date: str
    source: str


MAX_PRICE_PER_GPU_HOUR = 1000.0
"""The highest price per GPU-hour (USD) a user may give: a hundred times the dearest on-demand offer on
record (``data/prices.json``), and low enough that any step's cost on the largest cluster stays exact in
the solver's fixed-point (nano-USD, int64) cost table."""


def checked_price(price: float, error: type[ValueError]) -> float:
    """A price per GPU-hour the user gave, as a float; ``error`` (the calling layer's type) naming the
    allowed values when it is not a number in (0, `MAX_PRICE_PER_GPU_HOUR`] (inf and nan included)."""
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 < price <= MAX_PRICE_PER_GPU_HOUR:
        raise error(f"price per GPU-hour must be a number of USD above 0 and at most {MAX_PRICE_PER_GPU_HOUR:,.0f}, "
                    f"got {price!r}")
    return float(price)


@lru_cache(maxsize=1)
def price_offers() -> tuple[PriceOffer, ...]:
    data = json.loads(resources.files("parallelplan.hardware").joinpath("data", "prices.json").read_text())
    return tuple(PriceOffer.model_validate(entry) for entry in data["prices"])


def default_price(gpu: GPUSpec) -> float:
    """Median on-demand USD per GPU-hour of the GPU's offers; an error naming the fix when there is none."""
    offers = [o.usd_per_gpu_hour for o in price_offers() if o.gpu == gpu.name]
    if not offers:
        priced = sorted({o.gpu for o in price_offers()})
        raise HardwareError(f"no price for GPU {gpu.name}: give price_per_gpu_hour (USD per GPU-hour); "
                            f"prices are known for {', '.join(priced)}")
    return float(statistics.median(offers))
