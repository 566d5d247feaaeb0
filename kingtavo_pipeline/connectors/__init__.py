"""API connectors (Strapi, generic REST, ...): pure modules that page through an API over the shared HTTP layer."""
