"""kingtavo_pipeline: commerce data sync between external systems and Kingtavo's stores."""

__version__ = "0.1.0"
