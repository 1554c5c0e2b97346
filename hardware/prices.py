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
