// Stack — placeholder replaced as the library grows.
