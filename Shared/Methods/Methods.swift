// Methods — placeholder replaced as the library grows.
