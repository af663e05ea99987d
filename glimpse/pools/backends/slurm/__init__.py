"""The slurm cluster type: Dask workers as SLURM jobs (dask-jobqueue), or srun steps inside an allocation."""
