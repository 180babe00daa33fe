"""The four optimisation stages, one module each, plus stages/render/."""
