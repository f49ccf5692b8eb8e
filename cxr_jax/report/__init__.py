"""All report writing: figures (matplotlib, headless), tables and the static HTML page.

  figures   training curves, labelled matrices, saliency overlays, images side by side (PNG,
            written atomically)
  tables    Markdown / CSV / HTML tables with one number format
  html      index.html from (heading, body) sections
  gallery   paged galleries of captioned pictures (Card), index.html + page_NNN.html
  sections  the sections studies share (pointing game, metric tables, agreement, noise check)
"""

from cxr_jax.report import sections, tables
from cxr_jax.report.gallery import Card, write_gallery
from cxr_jax.report.figures import save_curves, save_matrix, save_overlays
from cxr_jax.report.html import image, write_index
from cxr_jax.report.tables import html as table_html

__all__ = ["Card", "image", "save_curves", "save_matrix", "save_overlays", "sections", "table_html",
           "tables", "write_gallery", "write_index"]
