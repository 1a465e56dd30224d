"""Azure page blob limits (Put Page REST reference): the page, and the largest Put Page request."""

PAGE = 512  # a page blob is written and sized in 512-byte pages
PUT_PAGE_MAX = 4 * 1024 * 1024  # largest Put Page request (Azurite does not enforce it)
