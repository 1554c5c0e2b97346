"""The cost model and the rules: bytes per GPU, step time, collective costs, divisibility and
compatibility rules, each rule named and explained. Built by the cost-model issue; empty until then."""
