-- Dagster's own run/event storage lives beside the operational store in a database of its own.
CREATE DATABASE dagster OWNER kingtavo;
