"""The compiler service: registered model versions -> verified, signed builds per target profile."""
