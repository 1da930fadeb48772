"""wnsweep's pipeline: sweep spec -> plan -> execute -> Parquet shards.

The numerical rooms (``problems``, ``models``, ``dynamics``, ``reference``, ``metrics``) take and
return numpy arrays and import neither Ray nor pyarrow.
"""

__version__ = "0.1.0"
