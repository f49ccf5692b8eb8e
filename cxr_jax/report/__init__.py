"""All report writing: figures (matplotlib, headless), tables and the static HTML page.

  figures   training curves, labelled matrices and heatmaps, interval dot plots, saliency
            overlays (signed maps on a diverging colour map; OVERLAY_CAPTION says how),
            images side by side (PNG, written atomically)
  tables    Markdown / CSV / HTML tables with one number format
  html      index.html from (heading, body) sections, some folded (`collapsed`)
  gallery   paged galleries of captioned pictures (Card), index.html + page_NNN.html
  sections  the sections studies share (the pictures a report leads with, pointing game,
            metric tables, agreement, noise check, counts as text)
"""

from cxr_jax.report import sections, tables
from cxr_jax.report.gallery import Card, write_gallery
from cxr_jax.report.figures import (OVERLAY_CAPTION, save_curves, save_heatmap, save_intervals,
                                    save_matrix, save_overlays)
from cxr_jax.report.html import caption, collapsed, image, write_index
from cxr_jax.report.tables import html as table_html

__all__ = ["Card", "OVERLAY_CAPTION", "caption", "collapsed", "image", "save_curves",
           "save_heatmap", "save_intervals", "save_matrix", "save_overlays", "sections",
           "table_html", "tables", "write_gallery", "write_index"]
