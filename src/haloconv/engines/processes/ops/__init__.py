"""The operations of a LocalCluster, each with its master half and its worker half side by side."""
