"""sibifang (四必访): the Women's Federations' closed-loop grassroots service on Prefect."""

__version__ = "0.1.0"
